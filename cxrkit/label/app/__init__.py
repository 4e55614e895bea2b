"""cxrkit's MONAI Label app: ``monailabel start_server --app <this folder> ...`` (see ``main.py``)."""
