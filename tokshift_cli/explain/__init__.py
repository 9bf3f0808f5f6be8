"""`tokshift explain`: which pixels and which moments made a prediction, and how faithful that answer is.

* :mod:`.relevance`: relevance maps per frame and patch (Chefer's gradient-weighted attention rule, attention
  rollout, gradient x input), carried across frames through the token shift.
* :mod:`.faithfulness`: per-frame importance by occlusion; deletion and insertion curves against random orders.
* :mod:`.pictures`: the contact sheet (PNG) and the overlay video (H.264).
* :mod:`.job`: the per-video job over many videos, with its journal and ``--resume``.
"""
