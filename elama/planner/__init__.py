"""The layout planner behind `python -m elama.plan`: parameters per stage (layout), memory per rank
(memory), step time and cost calibrated to published runs (cost, calibration), the layout search
(recommend) and the printed and JSON report (report). GPUs it knows: gpus."""
