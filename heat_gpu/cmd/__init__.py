"""The ``heat-gpu`` console script."""
