"""Raw folders -> prepared data: triplets of files, heuristic labels voted over the lights, the prepared folder with
its manifest and splits, and the label-quality report."""
