"""Models: timm backbones behind one contract, and the MRL classifier on top."""

from mrl.models.backbone import Backbone
from mrl.models.mrl_model import METHODS, MRLModel, method_name
from mrl.models.text import TextEncoder

__all__ = ["Backbone", "METHODS", "MRLModel", "TextEncoder", "method_name"]
