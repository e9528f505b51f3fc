"""Data: the TOFU-shaped record schema, loaders, the fictitious-author world and prompt views."""

from r2f.data.schema import Document, QAItem
from r2f.data.loader import load_documents, load_items, load_split, read_records, SPLIT_FILES

__all__ = ["Document", "QAItem", "load_documents", "load_items", "load_split", "read_records", "SPLIT_FILES"]
