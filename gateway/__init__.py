"""fedgate gateway: the site's HTTP API, settings, request pipeline, federation and the CLI."""
