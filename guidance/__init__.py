"""speechguide: classifier-guided speech diffusion. Pure PyTorch; never imports Ray."""
