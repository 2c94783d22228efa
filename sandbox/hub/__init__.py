"""The sandbox hub: image, network, spawner and JupyterHub configuration."""
