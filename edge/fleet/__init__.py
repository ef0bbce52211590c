"""Fleet features of the device: the lost-card hot list sync (``hotlist_sync``).

Import from the submodules (nothing is imported here, so importing the package does no work).
"""
