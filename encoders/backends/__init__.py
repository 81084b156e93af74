"""fieldstudio.encoders.backends"""
