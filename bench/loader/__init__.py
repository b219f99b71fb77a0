"""ResNet-50-style data loading: N worker processes read shuffled samples per epoch (bench/loader/loader.py)."""
