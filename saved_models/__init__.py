"""Models bitkeras pre-trained itself and ships, installed as `bitkeras.saved_models`.

Each folder holds `model.npz` (the released BiT format), `MODEL_CARD.md` and
`upstream.json`; `bitkeras.io.presets` names them.
"""
