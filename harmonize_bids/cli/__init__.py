"""Command-line interface: ``parser`` builds and checks options, ``run`` orchestrates."""
