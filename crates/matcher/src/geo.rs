//! Geometry for the geo operators: great-circle distance and point-in-polygon.

/// Mean Earth radius in kilometres, as used by Parse to convert `$maxDistanceInKilometers`.
pub(crate) const EARTH_RADIUS_KM: f64 = 6371.0;
/// Mean Earth radius in miles, as used by Parse to convert `$maxDistanceInMiles`.
pub(crate) const EARTH_RADIUS_MILES: f64 = 3958.8;

/// Great-circle distance between two points, in radians (haversine formula).
pub(crate) fn distance_radians(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lng2 - lng1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * a.sqrt().min(1.0).asin()
}

/// Whether `(lat, lng)` lies inside or on the boundary of the polygon with `n` vertices
/// `vertex(0..n)` as `(lat, lng)` (closing vertex optional). Planar test on (lat, lng)
/// coordinates, as MongoDB's legacy `$polygon` and parse-server's LiveQuery do.
pub(crate) fn polygon_contains_by(
    n: usize,
    vertex: impl Fn(usize) -> (f64, f64),
    lat: f64,
    lng: f64,
) -> bool {
    if n < 3 {
        return false;
    }
    let mut inside = false;
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = vertex(i);
        let (xj, yj) = vertex(j);
        if on_segment((xj, yj), (xi, yi), (lat, lng)) {
            return true;
        }
        if (yi > lng) != (yj > lng) {
            let x_cross = (xj - xi) * (lng - yi) / (yj - yi) + xi;
            if lat < x_cross {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// [`polygon_contains_by`] over a vertex slice.
pub(crate) fn polygon_contains(vertices: &[(f64, f64)], lat: f64, lng: f64) -> bool {
    polygon_contains_by(vertices.len(), |i| vertices[i], lat, lng)
}

fn on_segment(a: (f64, f64), b: (f64, f64), p: (f64, f64)) -> bool {
    let cross = (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0);
    if cross.abs() > 1e-12 {
        return false;
    }
    p.0 >= a.0.min(b.0) && p.0 <= a.0.max(b.0) && p.1 >= a.1.min(b.1) && p.1 <= a.1.max(b.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert!(distance_radians(10.0, 20.0, 10.0, 20.0).abs() < 1e-12);
        // San Francisco → Oakland is about 13 km.
        let d = distance_radians(37.7749, -122.4194, 37.8044, -122.2712) * EARTH_RADIUS_KM;
        assert!((12.0..15.0).contains(&d), "{d}");
        // Antipodes are π apart.
        assert!((distance_radians(0.0, 0.0, 0.0, 180.0) - std::f64::consts::PI).abs() < 1e-9);
    }

    #[test]
    fn polygons() {
        let square = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)];
        assert!(polygon_contains(&square, 0.5, 0.5));
        assert!(polygon_contains(&square, 0.0, 0.5));
        assert!(polygon_contains(&square, 1.0, 1.0));
        assert!(!polygon_contains(&square, 1.5, 0.5));
        let closed = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)];
        assert!(polygon_contains(&closed, 0.25, 0.75));
        assert!(!polygon_contains(&closed[..2], 0.0, 0.0));
    }
}
