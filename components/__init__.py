"""KFP components: one folder per step, each one decorated function that calls one library
function in `easel.steps` (no logic of its own).

Images: components run in our own image (the package installed), named by
EASEL_IMAGE_REGISTRY / EASEL_IMAGE_TAG at compile time. Because they are lightweight Python
components on our image, the same definitions run under `kfp.local` and on a cluster.
"""
