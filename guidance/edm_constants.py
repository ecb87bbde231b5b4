"""EDM's noise range and schedule curvature (Karras et al. 2022, Table 1).

The one source of these defaults for sampling, training, calibration, Tune's search space and the CLI.
Kept free of torch so that command-line option defaults can read it without loading torch.
"""

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
