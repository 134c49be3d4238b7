"""Per-country given and family names (romanized) that synthetic patients are named from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NameList:
    """Common given names by sex and common family names of one country."""

    female: tuple[str, ...]
    male: tuple[str, ...]
    family: tuple[str, ...]


def _names(text: str) -> tuple[str, ...]:
    """Split a ", "-separated list (kept as text so the lists stay compact)."""
    return tuple(text.split(", "))


NAMES: dict[str, NameList] = {
    "DE": NameList(
        female=_names(
            "Anna, Maria, Ursula, Monika, Petra, Sabine, Claudia, Julia, Katrin, Lena, Birgit, Gisela, "
            "Renate, Sophie, Hannah, Andrea"
        ),
        male=_names(
            "Thomas, Michael, Andreas, Stefan, Peter, Klaus, Jürgen, Wolfgang, Frank, Lukas, Jan, Markus, "
            "Uwe, Dieter, Matthias, Felix"
        ),
        family=_names(
            "Müller, Schmidt, Schneider, Fischer, Weber, Meyer, Wagner, Becker, Schulz, Hoffmann, "
            "Schäfer, Koch, Bauer, Richter, Klein, Wolf, Schröder, Neumann, Schwarz, Zimmermann"
        ),
    ),
    "FR": NameList(
        female=_names(
            "Marie, Nathalie, Isabelle, Sylvie, Catherine, Françoise, Camille, Chloé, Léa, Manon, Sophie, "
            "Martine, Céline, Monique, Élise, Claire"
        ),
        male=_names(
            "Jean, Pierre, Michel, Philippe, Alain, Nicolas, Christophe, Laurent, François, Thomas, "
            "Julien, Hugo, Louis, Éric, Olivier, Patrick"
        ),
        family=_names(
            "Martin, Bernard, Dubois, Thomas, Robert, Richard, Petit, Durand, Leroy, Moreau, Simon, "
            "Laurent, Lefebvre, Michel, Garcia, David, Bertrand, Roux, Vincent, Fournier"
        ),
    ),
    "US": NameList(
        female=_names(
            "Mary, Patricia, Jennifer, Linda, Elizabeth, Barbara, Susan, Jessica, Sarah, Karen, Ashley, "
            "Emily, Maria, Nancy, Lisa, Betty"
        ),
        male=_names(
            "James, Robert, John, Michael, David, William, Richard, Joseph, Thomas, Charles, Christopher, "
            "Daniel, Matthew, Anthony, Jose, Kevin"
        ),
        family=_names(
            "Smith, Johnson, Williams, Brown, Jones, Garcia, Miller, Davis, Rodriguez, Martinez, "
            "Hernandez, Lopez, Wilson, Anderson, Taylor, Moore, Jackson, Lee, Nguyen, Thompson"
        ),
    ),
    "JP": NameList(
        female=_names(
            "Yoko, Keiko, Tomoko, Yumi, Akiko, Kazuko, Sakura, Yui, Haruka, Mei, Naoko, Emi, Hana, "
            "Michiko, Rina, Aoi"
        ),
        male=_names(
            "Hiroshi, Takashi, Kenji, Makoto, Satoshi, Kazuo, Haruto, Ren, Daiki, Sota, Yuki, Shota, "
            "Akira, Minoru, Takumi, Koji"
        ),
        family=_names(
            "Sato, Suzuki, Takahashi, Tanaka, Watanabe, Ito, Yamamoto, Nakamura, Kobayashi, Kato, "
            "Yoshida, Yamada, Sasaki, Yamaguchi, Matsumoto, Inoue, Kimura, Hayashi, Shimizu, Saito"
        ),
    ),
    "IT": NameList(
        female=_names(
            "Maria, Anna, Giuseppina, Rosa, Giovanna, Francesca, Giulia, Chiara, Sara, Laura, Paola, "
            "Lucia, Elena, Alessandra, Martina, Sofia"
        ),
        male=_names(
            "Giuseppe, Giovanni, Antonio, Mario, Luigi, Francesco, Angelo, Vincenzo, Marco, Alessandro, "
            "Luca, Andrea, Matteo, Lorenzo, Paolo, Roberto"
        ),
        family=_names(
            "Rossi, Russo, Ferrari, Esposito, Bianchi, Romano, Colombo, Ricci, Marino, Greco, Bruno, "
            "Gallo, Conti, De Luca, Mancini, Costa, Giordano, Rizzo, Lombardi, Moretti"
        ),
    ),
    "ES": NameList(
        female=_names(
            "María, Carmen, Josefa, Isabel, Ana, Dolores, Pilar, Teresa, Lucía, Laura, Marta, Cristina, "
            "Paula, Elena, Rosa, Sara"
        ),
        male=_names(
            "Antonio, José, Manuel, Francisco, David, Juan, Javier, Daniel, Carlos, Jesús, Alejandro, "
            "Miguel, Rafael, Pablo, Sergio, Pedro"
        ),
        family=_names(
            "García, Rodríguez, González, Fernández, López, Martínez, Sánchez, Pérez, Gómez, Martín, "
            "Jiménez, Ruiz, Hernández, Díaz, Moreno, Muñoz, Álvarez, Romero, Alonso, Navarro"
        ),
    ),
    "NL": NameList(
        female=_names(
            "Maria, Johanna, Anna, Cornelia, Elisabeth, Wilhelmina, Emma, Julia, Sophie, Sanne, Lotte, "
            "Eva, Anouk, Femke, Ingrid, Marieke"
        ),
        male=_names(
            "Jan, Johannes, Cornelis, Hendrik, Willem, Pieter, Gerrit, Daan, Sem, Lucas, Bram, Thijs, "
            "Ruben, Joost, Maarten, Sander"
        ),
        family=_names(
            "de Jong, Jansen, de Vries, van den Berg, van Dijk, Bakker, Janssen, Visser, Smit, Meijer, "
            "de Boer, Mulder, de Groot, Bos, Vos, Peters, Hendriks, van Leeuwen, Dekker, Brouwer"
        ),
    ),
    "GB": NameList(
        female=_names(
            "Margaret, Susan, Patricia, Elizabeth, Sarah, Helen, Claire, Emma, Olivia, Amelia, Isla, "
            "Jessica, Rachel, Joan, Lucy, Charlotte"
        ),
        male=_names(
            "David, John, Paul, Andrew, Mark, James, Peter, Richard, Oliver, George, Harry, Jack, Ian, "
            "Stephen, Graham, William"
        ),
        family=_names(
            "Smith, Jones, Williams, Taylor, Brown, Davies, Evans, Wilson, Thomas, Johnson, Roberts, "
            "Robinson, Thompson, Wright, Walker, White, Edwards, Hughes, Green, Hall"
        ),
    ),
    "CA": NameList(
        female=_names(
            "Mary, Linda, Susan, Sarah, Jennifer, Marie, Nathalie, Emma, Olivia, Chloé, Karen, Julie, "
            "Jessica, Sophie, Ava, Diane"
        ),
        male=_names(
            "John, Robert, David, Michael, Jean, Pierre, James, Daniel, Liam, Noah, William, Marc, Luc, "
            "Paul, Ryan, Brian"
        ),
        family=_names(
            "Smith, Tremblay, Brown, Martin, Roy, Wilson, Gagnon, MacDonald, Johnson, Côté, Taylor, "
            "Campbell, Anderson, Bouchard, Lee, Gauthier, White, Thompson, Morin, Young"
        ),
    ),
    "AU": NameList(
        female=_names(
            "Margaret, Patricia, Susan, Karen, Jennifer, Michelle, Sarah, Jessica, Charlotte, Olivia, "
            "Amelia, Mia, Emily, Chloe, Rebecca, Joan"
        ),
        male=_names(
            "John, David, Peter, Michael, Robert, Paul, Mark, Andrew, Jack, Oliver, William, Noah, "
            "Thomas, Lachlan, Matthew, Graham"
        ),
        family=_names(
            "Smith, Jones, Williams, Brown, Wilson, Taylor, Johnson, White, Martin, Anderson, Thompson, "
            "Nguyen, Thomas, Walker, Harris, Lee, Ryan, Robinson, Kelly, King"
        ),
    ),
}

# Neighbouring countries whose residents a site also treats have no name list of their own here;
# they borrow the list of the language they mostly share.
NAME_SOURCE: dict[str, str] = {"AT": "DE", "CH": "DE", "BE": "FR", "NZ": "AU", "MX": "ES"}


def names_for(country: str) -> NameList:
    """The name list for residents of `country` (a neighbour borrows its language's list)."""
    return NAMES[NAME_SOURCE.get(country, country)]
