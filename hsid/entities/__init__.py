"""Re-identification: appearance embeddings, the entity matcher, edits and what analysis learns."""
