"""shopino-gateway: the security gateway in front of ShopinoERP."""

__version__ = "0.1.0"
