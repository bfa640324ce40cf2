"""The incident console (issue 16, Appendix C): static HTML/CSS/JS served at ``/console/`` on
the admin listener. It holds no secrets and needs no sign-in to load; every action goes
through the admin API with the operator's bearer token, so the role matrix applies unchanged."""
