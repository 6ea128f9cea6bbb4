"""Speculative decoding (lesson 19): proposers (n-gram lookup, a draft model), verification, KV rollback."""
