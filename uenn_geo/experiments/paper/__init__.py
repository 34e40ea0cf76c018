"""The paper experiment of Ma & Chan (sec. 5): data, training, the MD test and the report."""
