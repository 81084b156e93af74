"""fieldstudio.datasets"""
