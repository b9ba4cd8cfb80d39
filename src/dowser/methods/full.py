"""Full-FT: every weight of the scored linears of the last L blocks trains (paper's baseline)."""

from dowser.methods import Method, register


@register("full")
class Full(Method):
    """Whole trainable weights; traits (dense) in methods/table.py."""
