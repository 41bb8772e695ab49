"""The volume server: chunks on local disk (``volume.store``) and the server around them."""
