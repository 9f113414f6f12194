"""Prediction with multiple generations (paper 4.1): probability, uncertainty and mask."""
