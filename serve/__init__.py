"""Ray Serve app for guided speech generation: sampler ingress, denoiser and classifier deployments.

Import submodules directly (`serve.app`, `serve.client`, ...); importing this package pulls in
neither Ray nor torch, so the HTTP client stays light.
"""
