"""The network and its weights: the TokShift model on timm (``tokshift``), its config (``config``), the authors'
model table (``zoo``), resolving and loading weights (``weights``: Hub, folders, the authors' Google Drive through
``gdrive``), and converting the authors' checkpoints (``convert``).

Importing this package is cheap; ``import tokshift_cli.models.tokshift`` (torch, timm) registers the TokShift
architectures with timm (``timm.create_model("tokshift_base_patch16_224", num_frames=8)``).
"""
