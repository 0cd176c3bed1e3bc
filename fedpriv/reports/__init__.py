"""Reports over run folders: the sources' values beside measured ones, plots, frontier, gallery."""
