"""Reusable layers of the Vision-Mamba models: selective scan, SS2D, VSS block, CBAM, SDI."""
