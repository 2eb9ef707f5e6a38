"""The physics renderer: a height field with parts and defects (surface, defects), lit from three azimuths
(lighting), seen by a camera (camera), each layer with its own randomised settings (physics); `synth` writes
layers in the raw-folder layout with exact truth."""
