"""What only the dashboard needs, shared by its pages: folders, cached loaders and the session's
state (common), background jobs (jobs, tasks), charts and tables, the remembered folders.

Imports streamlit and the public surface of ``galaxy_core``'s sub-packages; never a page."""
