# Thin command-line tools over elama (installed as elama_tools).
