"""PopQL: find, name and test populations of images with an SQL superset."""
