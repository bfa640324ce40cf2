"""Kill switches (SPEC §9): isolate a scope everywhere within a second, checked from memory."""

from gateway.killswitch.matcher import SwitchIndex
from gateway.killswitch.model import MODES, Switch
from gateway.killswitch.registry import KillSwitchRegistry
from gateway.killswitch.scopes import SCOPES
from gateway.killswitch.streams import STREAMS, StreamRegistry

__all__ = ["MODES", "SCOPES", "STREAMS", "KillSwitchRegistry", "StreamRegistry", "Switch", "SwitchIndex"]
