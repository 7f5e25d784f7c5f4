"""e-Llama's findings reproduced at toy scale on CPU (tools/reproduce_findings.py, `make findings`):
corpus and tasks, the study's commands, the computed checks and REPORT.md."""
