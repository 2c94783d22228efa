"""``sandboxctl``: the one command line in front of every service and controller task."""
