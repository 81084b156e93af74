"""fieldstudio.apps"""
