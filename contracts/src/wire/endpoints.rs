//! The broker nodes a client may use: `CUTTLE_AMQP_URL` (or `--amqp-url`) lists one URL, or the
//! nodes of one RabbitMQ cluster separated by commas. A client starts at a random node, so a
//! fleet spreads over the cluster, keeps the node that answered, and after losing it tries the
//! others in turn, beginning with the next one. Pure rotation logic: the random start is drawn,
//! and the connections made, by `edge::connect::broker`.

/// A URL list with an empty entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the AMQP URL list has an empty entry (URLs are separated by single commas)")]
pub struct EndpointsError;

/// The broker URLs of one cluster and the one in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpEndpoints {
    urls: Vec<String>,
    current: usize,
}

impl AmqpEndpoints {
    /// Parses a comma-separated list of URLs (blanks around commas ignored), starting at the URL
    /// `start` picks among them (`start(len)` returns an index below `len`).
    pub fn parse(list: &str, start: impl FnOnce(usize) -> usize) -> Result<AmqpEndpoints, EndpointsError> {
        let urls: Vec<String> = list.split(',').map(|url| url.trim().to_owned()).collect();
        if urls.iter().any(String::is_empty) {
            return Err(EndpointsError);
        }
        let current = start(urls.len()) % urls.len();
        Ok(AmqpEndpoints { urls, current })
    }

    /// Checks a list for a command line (a clap `value_parser`), keeping it as given.
    pub fn check_list(list: &str) -> Result<String, String> {
        AmqpEndpoints::parse(list, |_| 0).map(|_| list.to_owned()).map_err(|e| e.to_string())
    }

    /// Every URL, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URL in use (or to try first).
    pub fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// One connection round: every URL once, from the current one on, each with its index.
    pub fn round(&self) -> Vec<(usize, String)> {
        let n = self.urls.len();
        (0..n).map(|step| (self.current + step) % n).map(|index| (index, self.urls[index].clone())).collect()
    }

    /// Records that the URL at `index` answered: it is kept until it is lost.
    pub fn connected(&mut self, index: usize) {
        debug_assert!(index < self.urls.len(), "index from round()");
        self.current = index % self.urls.len();
    }

    /// Records that the URL in use was lost: the next round begins with the next URL.
    pub fn lost(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(endpoints: &AmqpEndpoints) -> Vec<usize> {
        endpoints.round().into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn one_url_is_a_list_of_one() {
        let endpoints = AmqpEndpoints::parse("amqp://a/%2f", |_| 5).unwrap();
        assert_eq!(endpoints.urls(), ["amqp://a/%2f"]);
        assert_eq!(endpoints.current(), "amqp://a/%2f");
        assert_eq!(order(&endpoints), [0]);
    }

    #[test]
    fn urls_are_split_on_commas_and_trimmed() {
        let endpoints = AmqpEndpoints::parse("amqp://a, amqp://b ,amqp://c", |_| 0).unwrap();
        assert_eq!(endpoints.urls(), ["amqp://a", "amqp://b", "amqp://c"]);
    }

    #[test]
    fn empty_entries_are_refused() {
        for list in ["", "amqp://a,", ",amqp://a", "amqp://a,,amqp://b", " "] {
            assert!(AmqpEndpoints::parse(list, |_| 0).is_err(), "{list:?}");
        }
    }

    #[test]
    fn a_round_starts_at_the_chosen_url_and_visits_each_once() {
        let endpoints = AmqpEndpoints::parse("a,b,c", |len| len - 1).unwrap();
        assert_eq!(endpoints.current(), "c");
        assert_eq!(endpoints.round().into_iter().map(|(_, url)| url).collect::<Vec<_>>(), ["c", "a", "b"]);
    }

    #[test]
    fn the_url_that_answered_is_kept_and_a_lost_one_is_left_for_the_next() {
        let mut endpoints = AmqpEndpoints::parse("a,b,c", |_| 0).unwrap();
        endpoints.connected(1);
        assert_eq!(order(&endpoints), [1, 2, 0]);
        endpoints.lost();
        assert_eq!(order(&endpoints), [2, 0, 1]);
        endpoints.lost();
        assert_eq!(endpoints.current(), "a");
    }
}
