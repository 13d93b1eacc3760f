"""Objectives: the LightningModules that train a nested embedding (the nested loss is shared)."""
