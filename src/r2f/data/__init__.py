"""Data: the TOFU-shaped record schema, loaders, the fictitious-author world and prompt views."""

from r2f.data.schema import QAItem
from r2f.data.loader import load_items, load_split, SPLIT_FILES

__all__ = ["QAItem", "load_items", "load_split", "SPLIT_FILES"]
