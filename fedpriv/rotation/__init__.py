"""The complex-rotation defense (Xiang et al., ICLR 2020): equivariant layers, split networks, encodings."""
