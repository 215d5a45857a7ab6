"""Device side: the edge daemon, its readings store, and the Flower ClientApp."""
