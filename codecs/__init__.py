"""fieldstudio.codecs: neural video compression to ``.fsv`` files, quality metrics, and x264/x265 baselines."""
