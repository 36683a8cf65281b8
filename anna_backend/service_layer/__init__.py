"""Use cases over abstract ports: services, sample validation and the embedded dispatcher."""
