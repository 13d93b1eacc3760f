"""Models: timm backbones behind one contract, and the MRL classifier on top."""

from mrl.models.backbone import Backbone
from mrl.models.mrl_model import METHODS, MRLModel, method_name

__all__ = ["Backbone", "METHODS", "MRLModel", "method_name"]
