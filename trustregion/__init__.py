"""trustregion: Trust-Region offline alignment (TR-DPO, TR-IPO, TR-KTO) with a moving reference model."""

__version__ = "0.1.0"
