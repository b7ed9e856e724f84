"""Spectral core (DESIGN §5): fits, layer spectra, Kronecker alignment."""

from curvprobe.spectral.fits import DELTA_BIC_PAIRS as DELTA_BIC_PAIRS
from curvprobe.spectral.fits import RANK_MODEL_PARAMS as RANK_MODEL_PARAMS
from curvprobe.spectral.fits import RANK_MODELS as RANK_MODELS
from curvprobe.spectral.fits import LineFit as LineFit
from curvprobe.spectral.fits import ModelFit as ModelFit
from curvprobe.spectral.fits import RankProfile as RankProfile
from curvprobe.spectral.fits import TriangleFit as TriangleFit
from curvprobe.spectral.fits import WeightDecayFit as WeightDecayFit
from curvprobe.spectral.fits import alpha_gamma_s as alpha_gamma_s
from curvprobe.spectral.fits import ols_fit as ols_fit
from curvprobe.spectral.fits import participation_ratio as participation_ratio
from curvprobe.spectral.fits import power_law_fit as power_law_fit
from curvprobe.spectral.fits import rank_profile as rank_profile
from curvprobe.spectral.fits import s_weight as s_weight
from curvprobe.spectral.fits import zeta_bound as zeta_bound
from curvprobe.spectral.kronecker import KRONECKER_KINDS as KRONECKER_KINDS
from curvprobe.spectral.kronecker import KroneckerFactors as KroneckerFactors
from curvprobe.spectral.kronecker import kronecker_alignment as kronecker_alignment
from curvprobe.spectral.kronecker import kronecker_factors as kronecker_factors
from curvprobe.spectral.layers import DEFAULT_KINDS as DEFAULT_KINDS
from curvprobe.spectral.layers import Layer as Layer
from curvprobe.spectral.layers import directional_curvature as directional_curvature
from curvprobe.spectral.layers import gradient_svd as gradient_svd
from curvprobe.spectral.layers import layer_group as layer_group
from curvprobe.spectral.layers import layer_spectra as layer_spectra
from curvprobe.spectral.layers import select_layers as select_layers
