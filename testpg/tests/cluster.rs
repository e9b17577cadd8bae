//! Clusters start, answer on their databases, survive restarts, and the shared one serves several
//! tests.

use hookflow_testpg::{shared, Cluster};

/// What `select 1` on `url` prints, or psql's error.
fn select_1(cluster: &Cluster, url: &str) -> Result<String, String> {
    let output = cluster
        .psql(url)
        .args(["-tAc", "select 1"])
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn a_cluster_answers_on_fresh_databases_and_across_restarts() {
    let cluster = Cluster::start().unwrap();
    let a = cluster.fresh_database().unwrap();
    let b = cluster.fresh_database().unwrap();
    assert_ne!(a, b);
    for url in [&a, &b] {
        assert_eq!(select_1(&cluster, url).unwrap(), "1", "{url}");
    }

    let twice = cluster.start_again().unwrap_err().to_string();
    assert!(
        twice.contains("server log") && twice.contains("postmaster.pid"),
        "{twice}"
    );

    cluster.stop().unwrap();
    assert!(select_1(&cluster, &a).is_err(), "answers while stopped");
    cluster.start_again().unwrap();
    assert_eq!(select_1(&cluster, &a).unwrap(), "1");

    cluster.kill().unwrap();
    assert!(select_1(&cluster, &b).is_err(), "answers while killed");
    cluster.start_again().unwrap();
    assert_eq!(select_1(&cluster, &b).unwrap(), "1");
}

#[test]
fn database_names_are_checked() {
    let cluster = shared();
    assert_eq!(
        cluster.create_database("plain_Name_1").unwrap(),
        cluster.url_for("plain_Name_1")
    );
    for bad in [
        "",
        "x\"; drop database postgres; --",
        "a/b",
        &"x".repeat(64),
    ] {
        assert!(cluster.create_database(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_shared_cluster_serves_one_test() {
    let url = shared().fresh_database().unwrap();
    assert_eq!(select_1(shared(), &url).unwrap(), "1");
}

#[test]
fn the_shared_cluster_serves_another_test() {
    let url = shared().fresh_database().unwrap();
    assert_eq!(select_1(shared(), &url).unwrap(), "1");
    assert_eq!(select_1(shared(), &shared().url()).unwrap(), "1");
}
