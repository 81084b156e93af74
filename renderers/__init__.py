"""fieldstudio.renderers"""
