"""Sizing: the track's size measures of a model directory (:mod:`.sizer`: safetensors bytes, parameters, bins;
:mod:`.torchsave`: the organizers' torch.save measure) and the rules of each edition (:mod:`.track`)."""
