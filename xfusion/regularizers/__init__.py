"""Regularizations of the fused cube (paper section 3.3) and their proximal operators."""
