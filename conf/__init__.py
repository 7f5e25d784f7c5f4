# Hydra config module (installed as elama_conf): config.yaml and the groups below it.
