"""The inspection page (static files in this folder) and the small server that hands it the service's address
and inference key: `python -m web`."""
